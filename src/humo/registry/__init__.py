"""humo.registry"""
