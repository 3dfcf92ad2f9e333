"""The transform networks of the paper (§3.1): plain torch modules, the ground floor."""
