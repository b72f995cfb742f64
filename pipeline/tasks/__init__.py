"""Problems and how answers are checked: datasets, answer grading, the arithmetic step
checker, and the paper's own grader and extractions (reference_grader.py, analysis.compat)."""
