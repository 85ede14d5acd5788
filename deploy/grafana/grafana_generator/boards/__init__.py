"""One module per dashboard, each with a function that builds its `Dashboard`."""
