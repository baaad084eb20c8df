"""The deployment past one machine: ``cluster.toml`` (config), the processes of its roles on this
machine (control) and ``geotwin cluster up | down | status`` (cli). See docs/architecture.md,
"Past one machine"."""
