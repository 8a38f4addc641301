"""Static dashboard assets (index.html), served at /."""
