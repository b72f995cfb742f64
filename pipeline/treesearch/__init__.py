"""Tree search guided by a PRM: the algorithms, and what a search job writes."""
