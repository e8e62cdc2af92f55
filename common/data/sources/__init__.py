"""Data sources: the seed-case generator (with its planted truth) and the MovieLens importer. Imports only common.io."""
