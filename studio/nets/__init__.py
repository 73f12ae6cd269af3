"""Small networks that diffusers does not have (judges, feature nets) and the zoo UNet configs."""
