"""adamlab's experiment configs, installed as the package `adamlab.configs`.

Each module defines `get_config()`; select one by name (`adamlab train --config digits`) or by
path (`--config configs/digits.py`). `adamlab.config_dict.load_config` resolves both.
"""
