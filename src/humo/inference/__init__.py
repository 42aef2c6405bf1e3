"""humo.inference"""
