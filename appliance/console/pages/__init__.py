"""Console pages, one module per area. A module registers its pages with `@page` when it is
imported; `appliance.console.PAGE_MODULES` lists every module (static imports survive
freezing into one executable)."""
