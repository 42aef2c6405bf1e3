"""humo.diffusion"""
