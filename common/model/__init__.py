"""The model: the formula (one place), local training and DP-SGD, warm start, iALS. Imports common.config/errors and common.data.loader."""
