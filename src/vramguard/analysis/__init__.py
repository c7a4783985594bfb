"""Pure analysis: trends, verdicts and census diffs over plain values. Nothing here reads memory."""
