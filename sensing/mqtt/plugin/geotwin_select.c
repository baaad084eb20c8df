/*
 * geotwin_select — a mosquitto 2.0 plugin (interface v5) that tells geotwin which SensorThings
 * MQTT subscriptions carry a $select (OGC 18-088 §14.2.1: "v1.1/Observations?$select=result,phenomenonTime").
 *
 * A plain broker delivers by topic equality: a notification published to
 * "v1.1/Observations" never reaches a filter "v1.1/Observations?$select=result". Whoever publishes
 * STA notifications (the ingestion worker, the API's notifier, the announcer) must also publish the
 * selected properties to "v1.1/Observations?$select=result" — for the select lists somebody asked
 * for, which only the broker sees. On each SUBSCRIBE whose filter holds "?$select=", this plugin
 * publishes a retained message to "$geotwin/select/<filter>" (in the filter '%', '+' and '#' are
 * written %25, %2B, %23: wildcards are not allowed in a topic name); the publishers subscribe to
 * "$geotwin/select/#" and, with retained messages kept in the broker's persistence file, know every
 * select list asked for since, across restarts of either side.
 *
 * The plugin decides nothing: it returns MOSQ_ERR_PLUGIN_DEFER, and the acl_file decides as before.
 * Built by geotwin (sensing/mqtt/broker.py: cc -shared -fPIC) against Debian's mosquitto-dev and
 * libmosquitto-dev headers; loaded with "plugin <path>" in mosquitto.conf.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PREFIX "$geotwin/select/"
#define MARK "?$select="

static mosquitto_plugin_id_t *plugin_id = NULL;

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *filter;
	char *topic, *p;
	size_t n, extra = 0;
	const char *c;

	(void)event;
	(void)userdata;
	if(ed->access != MOSQ_ACL_SUBSCRIBE || ed->topic == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	filter = ed->topic;
	if(strstr(filter, MARK) == NULL || strncmp(filter, "$share/", 7) == 0){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	for(c = filter; *c; c++){
		if(*c == '%' || *c == '+' || *c == '#') extra += 2;
	}
	n = strlen(PREFIX) + strlen(filter) + extra + 1;
	topic = mosquitto_malloc(n);
	if(topic == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	p = topic + sprintf(topic, "%s", PREFIX);
	for(c = filter; *c; c++){
		if(*c == '%'){ memcpy(p, "%25", 3); p += 3; }
		else if(*c == '+'){ memcpy(p, "%2B", 3); p += 3; }
		else if(*c == '#'){ memcpy(p, "%23", 3); p += 3; }
		else { *p++ = *c; }
	}
	*p = '\0';
	mosquitto_broker_publish_copy(NULL, topic, 1, "1", 1, true, NULL);
	mosquitto_log_printf(MOSQ_LOG_INFO, "geotwin_select: %s", filter);
	mosquitto_free(topic);
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
}
