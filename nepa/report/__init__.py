"""`nepa report` (nepa/report/build.py): our numbers beside the paper's, with curves, attention and similarity
maps, and the environment.

Reads every {runs}/*-*/*/metrics.json and metrics.csv (nepa/report/gather.py), the exported models of the
`--maps` variants and a few validation images; writes {results}/report.md, a self-contained {results}/report.html
and {results}/report/ (the PNG figures and the tables as CSV, for `snakemake --report`). Rows with no run say
"not run"; rows from reduced-scale runs are marked and compare in direction only (nepa/report/tables.py).

The package imports nothing itself: the experiment plan reads paper.py's rows without torch.
"""
