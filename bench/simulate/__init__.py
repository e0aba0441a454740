"""``lianxin simulate``: a discrete-event simulation of the national federation running the real exchange rules."""
