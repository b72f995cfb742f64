"""Problems and how answers are checked: datasets, answer grading, the arithmetic step checker;
code tasks (HumanEval / JSONL problems, the bubblewrap sandbox, the test harness, code grading)."""
