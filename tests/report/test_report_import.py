"""The report runs where only pandas and matplotlib are installed: a whole run, plots included, loads
no torch, transformers or Ray (and importing it loads no matplotlib either)."""

from __future__ import annotations


def test_import_does_not_load_torch_ray_or_matplotlib(heavy_modules_loaded):
    statements = "import mezo_ray.report, mezo_ray.report.__main__\nassert 'matplotlib' not in sys.modules"
    assert heavy_modules_loaded(statements) == []


def test_a_report_with_plots_loads_no_torch_transformers_or_ray(heavy_modules_loaded, experiments, tmp_path):
    statements = (
        "from mezo_ray.report.__main__ import main\n"
        f"assert main([{str(experiments['roberta_mezo'])!r}, '--out', {str(tmp_path)!r}]) == 0"
    )
    assert heavy_modules_loaded(statements) == []
    assert list((tmp_path / "plots").glob("*.png"))  # plots were drawn: this was the whole run
