"""hoptrace: where did this packet go, how long did each hop take, where and why did it die."""

__version__ = "0.1.0"
