-- A second database on the same PostgreSQL for the Prefect server (the service uses "wos").
CREATE DATABASE prefect;
