"""One module per output format: ``json_report`` (documents), ``text`` (humans)."""
