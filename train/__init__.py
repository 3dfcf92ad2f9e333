"""Training side of Johnson, Alahi & Fei-Fei (2016): transform networks and perceptual losses."""
