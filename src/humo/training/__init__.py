"""humo.training"""
