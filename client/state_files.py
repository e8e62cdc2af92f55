"""The files of a node's state directory. No Flower and no TensorFlow here: the device commands (`fedctx device
...`) read and write these files and must start fast. Each is written whole by common.io's atomic writer; the .npz
files owner-only (`private=True`: theta_u, the user keys and the device's data never leave the device)."""

from __future__ import annotations

__all__ = ["NODE_STATE_FILE", "CONTENT_FILE", "GLOBAL_MODEL_FILE", "STORE_FILE", "DATA_INDEX_FILE", "DEVICE_FILE",
           "DEVICES_DIR"]

#: A node's state directory (a device's state-dir; a simulated node's RUN_DIR/devices/node-<partition>):
NODE_STATE_FILE = "node-state.npz"      # theta_u [U, dim], ready, taken (rounds per user), user keys, round reached
CONTENT_FILE = "content.npz"            # h(c) [n_items, text_dim] of the schema in schema.json
GLOBAL_MODEL_FILE = "global_model.npz"  # the latest global shared parameters received
STORE_FILE = "store.npz"                # the device's data encoded with the schema (rebuilt when either changes)
DATA_INDEX_FILE = "data-index.npz"      # every row of the device's data for `fedctx device` (client.device_state)
DEVICE_FILE = "device.json"             # the run's settings and the device's data-dir (for `fedctx device ...`)
DEVICES_DIR = "devices"                 # simulated devices' state under a run directory

