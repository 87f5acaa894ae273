"""``guidestack bench``: degrade clean faces, restore them with several recipes, and report
metrics with confidence intervals (results.csv, results.md, report.html)."""
