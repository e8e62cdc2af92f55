"""Privacy: noise, secret sampling, accounting, the ledger, the written statements and the release policy. Imports common.config/errors and common.model."""
