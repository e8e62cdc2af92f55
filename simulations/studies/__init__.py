"""Studies: one-off measurements behind docs/results.md and docs/encoders.md (seeds, expected HR, encoder and objective studies, context width)."""
