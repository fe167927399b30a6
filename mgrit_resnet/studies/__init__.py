"""Studies: measurements built on the solver, the networks and training; no argument parsing, no printing.

``perfmodel`` predicts wall time at any rank count (``schedule`` simulates the
solver's schedule, ``calibrate`` measures one rank's step costs), ``tune``
searches MGRIT hierarchies, ``sweep`` runs a grid of configs into a table,
``compare`` trains several strategies side by side, ``plot`` draws them all.
"""
