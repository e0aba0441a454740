"""``python -m bench.scale``: the Sichuan tree (205 nodes in host mode) started, measured idle and under load."""
