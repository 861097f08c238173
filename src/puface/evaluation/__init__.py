"""FaceCure-style evaluation: the protocol, FR trainers (nn / linear / e2e), metrics and the HTML report."""
