"""Image priors (regularisers) for gradient inversion. Never imports :mod:`inversion`."""
