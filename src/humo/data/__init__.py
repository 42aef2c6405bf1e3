"""humo.data"""
