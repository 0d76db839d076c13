"""Code that two or more servelane services share. Never imports a service."""
