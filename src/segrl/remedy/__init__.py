"""ReMedy (Tan & Monz 2025): MT evaluation as reward modelling."""
