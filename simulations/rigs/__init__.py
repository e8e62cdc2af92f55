"""Test rigs: an in-process federation without Flower, a loopback deployment (SuperLink and SuperNodes as processes), a loopback Ray cluster."""
