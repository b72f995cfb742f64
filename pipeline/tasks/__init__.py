"""Problems and how answers are checked: datasets, answer grading, the arithmetic step
checker, and the paper's own grader and extractions (reference_grader.py, analysis.compat);
code tasks (HumanEval / JSONL problems, the bubblewrap sandbox, the test harness, code grading)."""
