"""GitHub single sign-on for Tether.

The ``github`` resource kind holds an OAuth app's settings and which teams give which roles
(``teams_to_roles``); ``tether login --auth=github`` sends the browser to GitHub's OAuth web
flow, then reads the user and their team memberships from GitHub's REST API. The user's teams
(``github_teams``, as ``org/team``) and organizations become traits.
"""
