"""The benchmarks of timm-hvt, and what they share with the tests: the authors' computation (`authors_hvt`) and
scikit-learn's digits as an ImageFolder (`digits`). Run from the repository root: `python -m benchmarks.NAME`."""
