-- The Feast SQL registry lives in its own database beside Airflow's metadata DB.
CREATE DATABASE feast OWNER recforge;
