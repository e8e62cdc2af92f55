"""Federation: the message protocol, parameter (de)serialisation, the user store, per-user updates, aggregation and SecAgg+ packing. Imports common.data/model/privacy."""
