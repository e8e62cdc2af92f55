"""Data: the dataset spec, tables and loader, context encoding, the public schema, the prepared cache, partitioning and the data sources. Imports only common.config/errors/io."""
