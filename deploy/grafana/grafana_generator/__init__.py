"""The Grafana dashboard generator, split by concern: `model` (panels, variables, dashboards),
`queries` (SQL building blocks and catalog facts), `boards` (one module per dashboard) and
`provisioning` (data source and provider files). `deploy/grafana/generate.py` is its command line."""
