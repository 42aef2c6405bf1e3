"""humo.evaluation"""
