"""One module per CLI subcommand; ``main`` wires them into one ``click`` group lazily."""
