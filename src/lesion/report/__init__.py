"""Result serialisation, plots and the HTML report (ARCHITECTURE.md: report/)."""

from lesion.report.jsonio import provenance, to_jsonable, write_json

__all__ = ["provenance", "to_jsonable", "write_json"]
