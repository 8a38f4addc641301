"""The dashboard's static files (index.html, css/, js/, vendor/uPlot), served at / and
/static/<version>/ by api/ops.py. Plain ES modules: no build step, no Node.js at run time."""
