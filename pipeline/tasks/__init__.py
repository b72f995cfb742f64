"""Problems and how answers are checked: datasets, answer grading, the arithmetic step checker."""
