"""The scenario: one typed model of a load level (``model``), its flags (``flags``), its TOML file (``files``),
its checks (``check``) and the way a front end gets one from its command line (``load``)."""
