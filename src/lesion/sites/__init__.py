"""Sites: where units live in any model, found by a recording forward and addressed one way everywhere
(SPEC §6.1; ARCHITECTURE.md, "A `Site` type")."""

from lesion.sites.discover import discover_sites, record
from lesion.sites.site import HeadLayout, Site
from lesion.sites.table import SiteTable

__all__ = ["HeadLayout", "Site", "SiteTable", "discover_sites", "record"]
