"""Theory checks: closed-form answers for Gaussian problems and the experiment that compares PMRF with them."""
