# OpenID Connect Back-Channel Logout 1.0 for LemonLDAP::NG 2.16, whose OpenID Connect issuer
# leaves it as a TODO (issue #1194): at logout, every relying party of the session whose
# logout type is "back" receives a logout token, signed with the provider's key, by a POST
# to its logout URL. Loaded through `customPlugins` by the test suite's provider (llng.py).
# Like Pro Santé Connect, the provider also names its session in ID tokens and logout tokens
# (`sid`, which LemonLDAP::NG 2.16 does not send): a digest of the subject and the session's
# authentication time, the same for every token of one provider session. With
# ACCOUNT_SERVER_TEST_SID_PER_SUBJECT=1 in its environment, a digest of the subject alone:
# one `sid` that a new authentication does not change (as Keycloak keeps its session's on
# `prompt=login`), shared by every browser of the subject.
package AccountServerTests::BackChannelLogout;

use strict;
use Mouse;
use LWP::UserAgent;
use Lemonldap::NG::Portal::Main::Constants qw(PE_OK);
use Digest::SHA qw(sha256_hex);

extends 'Lemonldap::NG::Portal::Main::Plugin';

use constant beforeLogout => 'sendLogoutTokens';
use constant hook         => { oidcGenerateIDToken => 'addSessionID' };

sub init { 1 }

sub sessionID {
    my ( $sub, $authTime ) = @_;
    return sha256_hex( ( $sub // '' ) . '|' ) if $ENV{ACCOUNT_SERVER_TEST_SID_PER_SUBJECT};
    return sha256_hex( ( $sub // '' ) . '|' . ( $authTime // '' ) );
}

sub addSessionID {
    my ( $self, $req, $payload, $rp ) = @_;
    $payload->{sid} = sessionID( $payload->{sub}, $payload->{auth_time} )
      if defined $payload->{auth_time};
    return PE_OK;
}

sub sendLogoutTokens {
    my ( $self, $req ) = @_;
    my $oidc = $self->p->loadedModules->{'Lemonldap::NG::Portal::Issuer::OpenIDConnect'}
      or return PE_OK;
    my $connected = $req->userData->{_oidcConnectedRP} or return PE_OK;
    my $ua = LWP::UserAgent->new( timeout => 5 );
    foreach my $rp ( grep /\w/, split( ',', $connected ) ) {
        my $options = $self->conf->{oidcRPMetaDataOptions}->{$rp} or next;
        next unless ( $options->{oidcRPMetaDataOptionsLogoutType} || '' ) eq 'back';
        my $url = $options->{oidcRPMetaDataOptionsLogoutUrl} or next;
        my $payload = {
            iss    => $oidc->iss,
            aud    => $options->{oidcRPMetaDataOptionsClientID},
            iat    => time,
            exp    => time + 120,
            jti    => join( '', map { sprintf( '%02x', int( rand(256) ) ) } 1 .. 16 ),
            sub    => $oidc->getUserIDForRP( $req, $rp, $req->userData ),
            sid    => sessionID( $oidc->getUserIDForRP( $req, $rp, $req->userData ), $req->userData->{_lastAuthnUTime} ),
            events => { 'http://schemas.openid.net/event/backchannel-logout' => {} },
        };
        my $token = $oidc->createJWT( $payload, 'RS256', $rp, 'logout+jwt' );
        my $response = $ua->post( $url, { logout_token => $token } );
        $self->logger->notice( "back-channel logout to $rp: " . $response->code );
    }
    return PE_OK;
}

1;
