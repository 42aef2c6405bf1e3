"""humo.features"""
